# cmake -DPTXAS=... -DPTX="a.ptx|b.ptx" -DOUT=dir -P AssembleSm70.cmake (the back end of Sm70Check.cmake).
# The PTX targets sm_75 with this nvcc's PTX ISA; CUDA 12.9's ptxas reads ISA 8.8 at most and assembles a
# module for the architecture it declares, so both are lowered first. An instruction or feature the lower
# ISA or sm_70 lacks is then a ptxas error naming it.
string(REPLACE "|" ";" PTX "${PTX}")  # joined by Sm70Check.cmake: a ";" would split the argument
file(MAKE_DIRECTORY "${OUT}")
foreach(ptx IN LISTS PTX)
  get_filename_component(name "${ptx}" NAME_WE)
  file(READ "${ptx}" text)
  string(REGEX REPLACE "\n\\.version [0-9]+\\.[0-9]+\n" "\n.version 8.8\n" text "${text}")
  string(REGEX REPLACE "\n\\.target sm_75\n" "\n.target sm_70\n" text "${text}")
  file(WRITE "${OUT}/${name}.sm70.ptx" "${text}")
  execute_process(COMMAND "${PTXAS}" -arch=sm_70 -Werror "${OUT}/${name}.sm70.ptx" -o "${OUT}/${name}.sm70.cubin"
                  RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "sm_70: ptxas refused ${name} (above): that code needs a newer GPU than V100")
  endif()
  message(STATUS "sm_70: ${name} assembled (${OUT}/${name}.sm70.cubin)")
endforeach()
