# Converts the reference checkpoints for the tests: tiny, tiny_v12 and tiny121 (committed) and,
# when present, the big `umas` and `umas121` checkpoints. Run by ctest as the `models` fixture.
file(MAKE_DIRECTORY ${OUT})
set(models ${DATA}/checkpoints/tiny.pt ${DATA}/checkpoints/tiny_v12.pt
           ${DATA}/checkpoints/tiny121.pt)
foreach(big ${BIG} ${BIG121})
  if(EXISTS ${big})
    list(APPEND models ${big})
  else()
    message(STATUS "no ${big}: tests on its model will be skipped")
  endif()
endforeach()
foreach(pt ${models})
  get_filename_component(stem ${pt} NAME_WE)
  execute_process(COMMAND ${PYTHON} ${CONVERTER} ${pt} ${OUT}/${stem}.safetensors
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "umas-convert failed on ${pt}")
  endif()
endforeach()
