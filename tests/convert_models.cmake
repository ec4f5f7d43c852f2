# Converts the reference checkpoints for the tests: tiny and tiny_v12 (committed) and, when
# present, the big `umas` checkpoint. Run by ctest as the `models` fixture.
file(MAKE_DIRECTORY ${OUT})
set(models ${DATA}/checkpoints/tiny.pt ${DATA}/checkpoints/tiny_v12.pt)
if(EXISTS ${BIG})
  list(APPEND models ${BIG})
else()
  message(STATUS "no ${BIG}: tests on the `umas` model will be skipped")
endif()
foreach(pt ${models})
  get_filename_component(stem ${pt} NAME_WE)
  execute_process(COMMAND ${PYTHON} ${CONVERTER} ${pt} ${OUT}/${stem}.safetensors
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "umas-convert failed on ${pt}")
  endif()
endforeach()
