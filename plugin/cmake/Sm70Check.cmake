# V100 (sm_70) compile check without a CUDA 12 nvcc. CUDA 13 dropped sm_70, and PyPI's CUDA 12 compiler
# packages hold no nvcc: nvidia-cuda-nvcc-cu12 ships ptxas and libNVVM only. What they do allow:
#   front end: this nvcc compiles the CUDA sources against CUDA 12.9's CCCL (nvidia-cuda-cccl-cu12), the
#              cub/thrust a CUDA 12 build uses, to PTX for the lowest virtual architecture it has (75);
#   back end:  CUDA 12.9's ptxas assembles that PTX for sm_70, which fails on any instruction V100 lacks.
# Not covered: CUDA 12's own front end (cudafe++/cicc). A real V100 build: README "GPUs and CUDA toolkits".
#
#   cmake -S plugin -B B -DHPS_SM70_CHECK_CUDA12=<site-packages>/nvidia && cmake --build B --target hps_sm70_check
set(HPS_SM70_CHECK_CUDA12 "" CACHE PATH
    "folder holding cuda_nvcc/bin/ptxas and cuda_cccl/include of CUDA 12.9 (site-packages/nvidia): adds hps_sm70_check")
if(NOT HPS_SM70_CHECK_CUDA12)
  return()
endif()
set(_hps_ptxas "${HPS_SM70_CHECK_CUDA12}/cuda_nvcc/bin/ptxas")
set(_hps_cccl "${HPS_SM70_CHECK_CUDA12}/cuda_cccl/include")
if(NOT EXISTS "${_hps_ptxas}" OR NOT EXISTS "${_hps_cccl}/cub/cub.cuh")
  message(FATAL_ERROR "HPS_SM70_CHECK_CUDA12=${HPS_SM70_CHECK_CUDA12} has no cuda_nvcc/bin/ptxas or "
    "cuda_cccl/include/cub: pip install nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-cccl-cu12==12.9.27 and pass "
    "their site-packages/nvidia folder")
endif()
_hps_cuda_objects(hps_kernels_ptx75)
set_target_properties(hps_kernels_ptx75 PROPERTIES CUDA_PTX_COMPILATION ON CUDA_ARCHITECTURES 75-virtual)
target_include_directories(hps_kernels_ptx75 BEFORE PRIVATE "${_hps_cccl}")
add_custom_target(hps_sm70_check
  COMMAND ${CMAKE_COMMAND} "-DPTXAS=${_hps_ptxas}" "-DPTX=$<JOIN:$<TARGET_OBJECTS:hps_kernels_ptx75>,|>"
          "-DOUT=${CMAKE_CURRENT_BINARY_DIR}/sm70" -P "${CMAKE_CURRENT_LIST_DIR}/AssembleSm70.cmake"
  DEPENDS hps_kernels_ptx75 VERBATIM)
