/* lmp_umas.cpp - LAMMPS executable with `pair_style umas` built in.
 *
 * Same command line as LAMMPS' `lmp` (-in, -var, -log, -screen, -sf, ...), e.g.
 *   mpirun -np 2 lmp_umas -in in.lammps
 * For a LAMMPS without the PLUGIN package (Debian's 29 Sep 2021): the style is inserted into
 * the instance's pair-style map after construction, before the input is read. The body follows
 * LAMMPS' own src/main.cpp of that release (MDI and FPE trapping left out; no KOKKOS, so no
 * KokkosLMP::finalize()).
 */
#include "exceptions.h"
#include "input.h"
#include "lammps.h"
#include "lmppython.h"
#include "pair_umas.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

using namespace LAMMPS_NS;

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;

    // Without LAMMPS_EXCEPTIONS (Debian's build) error->all() ends the job itself with
    // MPI_Finalize + exit(1) and error->one() with MPI_Abort; the handlers below only fire in
    // a LAMMPS built with exceptions (then they end the job the same way as main.cpp does).
    try {
        LAMMPS *lmp = new LAMMPS(argc, argv, comm);
        umas_register_pair_style(lmp);
        lmp->input->file();
        delete lmp;
    } catch (LAMMPSAbortException &) {
        Python::finalize();
        MPI_Abort(MPI_COMM_WORLD, 1);
    } catch (LAMMPSException &) {
        Python::finalize();
        MPI_Barrier(comm);
        MPI_Finalize();
        exit(1);
    } catch (fmt::format_error &fe) {
        fprintf(stderr, "fmt::format_error: %s\n", fe.what());
        Python::finalize();
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    Python::finalize();
    MPI_Barrier(comm);
    MPI_Finalize();
    return 0;
}
