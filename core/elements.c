/*
 * elements.c - chemical symbol <-> atomic number (1..118), standard case-sensitive symbols.
 */
#include "umas.h"

#include <string.h>

/* symbols[z] for z = 1..118; symbols[0] is a placeholder. */
static const char *const symbols[119] = {
    "",   "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
};

int umas_element_number(const char *symbol) {
    if (symbol == NULL || symbol[0] == '\0') {
        return 0;
    }
    for (int z = 1; z <= 118; z++) {
        if (strcmp(symbol, symbols[z]) == 0) {
            return z;
        }
    }
    return 0;
}

const char *umas_element_symbol(int atomic_number) {
    if (atomic_number < 1 || atomic_number > 118) {
        return NULL;
    }
    return symbols[atomic_number];
}
