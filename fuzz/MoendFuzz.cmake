# Included by the top-level CMakeLists.txt: builds the libFuzzer targets of
# fuzz/ (a separate CMake project compiled with clang, into
# ${CMAKE_BINARY_DIR}/fuzz) and runs each for a short, bounded time as a ctest
# test fuzz_<target> (label "reliability"). scripts/fuzz.sh is the long run.
#
# MOEND_FUZZ: ON requires clang with libFuzzer, OFF skips fuzzing, AUTO (the
# default) builds the fuzzers when clang can link -fsanitize=fuzzer. Once on,
# a fuzzer that fails to build fails the main build.
set(MOEND_FUZZ AUTO CACHE STRING "Build the libFuzzer targets of fuzz/: ON, OFF or AUTO")
set_property(CACHE MOEND_FUZZ PROPERTY STRINGS ON OFF AUTO)
set(MOEND_FUZZ_SECONDS 20 CACHE STRING "Seconds each fuzz_<target> ctest test fuzzes")

set(MOEND_FUZZ_TARGETS
  fuzz_safetensors fuzz_model_config fuzz_model_load fuzz_sensitivity_table fuzz_plan
  fuzz_registry_rpc fuzz_router_rpc)

set(MOEND_HAVE_FUZZ OFF)
if(NOT MOEND_FUZZ STREQUAL "OFF")
  find_program(MOEND_FUZZ_CXX NAMES clang++-14 clang++)
  find_program(MOEND_FUZZ_CC NAMES clang-14 clang)
  if(MOEND_FUZZ_CXX AND MOEND_FUZZ_CC)
    # Can this clang link a libFuzzer binary (Debian: libclang-rt-14-dev)?
    if(NOT DEFINED MOEND_FUZZ_LINKS OR NOT MOEND_FUZZ_LINKS_WITH STREQUAL MOEND_FUZZ_CXX)
      set(check_dir ${CMAKE_BINARY_DIR}/CMakeFiles/moend_fuzz_check)
      file(MAKE_DIRECTORY ${check_dir})
      file(WRITE ${check_dir}/check.cc
        "#include <cstddef>\n#include <cstdint>\n"
        "extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
      execute_process(
        COMMAND ${MOEND_FUZZ_CXX} -fsanitize=fuzzer,address,undefined check.cc -o check
        WORKING_DIRECTORY ${check_dir} RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
      if(rc EQUAL 0)
        set(MOEND_FUZZ_LINKS ON CACHE INTERNAL "")
      else()
        set(MOEND_FUZZ_LINKS OFF CACHE INTERNAL "")
        message(STATUS "moend: ${MOEND_FUZZ_CXX} cannot link libFuzzer: ${err}")
      endif()
      set(MOEND_FUZZ_LINKS_WITH ${MOEND_FUZZ_CXX} CACHE INTERNAL "")
    endif()
    set(MOEND_HAVE_FUZZ ${MOEND_FUZZ_LINKS})
  endif()
  if(MOEND_FUZZ STREQUAL "ON" AND NOT MOEND_HAVE_FUZZ)
    message(FATAL_ERROR "MOEND_FUZZ=ON but no clang that links libFuzzer was found "
                        "(Debian: apt-get install clang-14 libclang-rt-14-dev libomp-14-dev)")
  endif()
endif()
message(STATUS "moend: libFuzzer targets ${MOEND_HAVE_FUZZ}")
if(NOT MOEND_HAVE_FUZZ)
  return()
endif()

set(moend_fuzz_binaries)
foreach(target ${MOEND_FUZZ_TARGETS})
  list(APPEND moend_fuzz_binaries ${CMAKE_BINARY_DIR}/fuzz/${target})
endforeach()

include(ExternalProject)
include(ProcessorCount)
ProcessorCount(moend_fuzz_jobs)
if(DEFINED ENV{MOEND_BUILD_JOBS})
  set(moend_fuzz_jobs $ENV{MOEND_BUILD_JOBS})
endif()
ExternalProject_Add(moend_fuzz
  SOURCE_DIR ${CMAKE_SOURCE_DIR}/fuzz
  BINARY_DIR ${CMAKE_BINARY_DIR}/fuzz
  CMAKE_ARGS
    -DCMAKE_CXX_COMPILER=${MOEND_FUZZ_CXX}
    -DCMAKE_C_COMPILER=${MOEND_FUZZ_CC}
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
  BUILD_COMMAND ${CMAKE_COMMAND} --build <BINARY_DIR> -j ${moend_fuzz_jobs}
  BUILD_ALWAYS ON
  INSTALL_COMMAND ""
  BUILD_BYPRODUCTS ${moend_fuzz_binaries})

foreach(target ${MOEND_FUZZ_TARGETS})
  add_test(NAME ${target}
    COMMAND bash ${CMAKE_SOURCE_DIR}/fuzz/ctest_run.sh
      ${CMAKE_BINARY_DIR}/fuzz/${target} ${CMAKE_SOURCE_DIR}/fuzz ${MOEND_FUZZ_SECONDS}
      ${CMAKE_BINARY_DIR}/fuzz/artifacts)
  set_tests_properties(${target} PROPERTIES
    LABELS reliability
    TIMEOUT 300)
endforeach()
