# Included by the top-level CMakeLists.txt: builds the libFuzzer targets of
# fuzz/ (a separate CMake project compiled with clang, into
# ${CMAKE_BINARY_DIR}/fuzz) and runs each for a fixed number of executions as
# a ctest test fuzz_<target> (labels "reliability" and "fuzz"). scripts/fuzz.sh
# is the long run.
#
# MOEND_FUZZ: ON requires clang with libFuzzer (scripts/test.sh, CI), OFF skips
# fuzzing, AUTO (the default) builds the fuzzers when clang can link
# -fsanitize=fuzzer and warns when it cannot; a failed check is not cached, so
# installing the missing package is enough. Once on, a fuzzer that fails to
# compile or link fails the main build.
set(MOEND_FUZZ AUTO CACHE STRING "Build the libFuzzer targets of fuzz/: ON, OFF or AUTO")
set_property(CACHE MOEND_FUZZ PROPERTY STRINGS ON OFF AUTO)
set(MOEND_FUZZ_RUNS 30000 CACHE STRING
  "Executions of each fuzz_<target> ctest test (the corpus replay included)")
set(MOEND_FUZZ_MAX_SECONDS 120 CACHE STRING
  "Failure guard: a fuzz_<target> ctest test stops after this many seconds")

set(MOEND_FUZZ_TARGETS
  fuzz_safetensors fuzz_model_config fuzz_model_load fuzz_sensitivity_table fuzz_plan
  fuzz_registry_rpc fuzz_router_rpc)

set(MOEND_HAVE_FUZZ OFF)
if(NOT MOEND_FUZZ STREQUAL "OFF")
  find_program(MOEND_FUZZ_CXX NAMES clang++-14 clang++)
  find_program(MOEND_FUZZ_CC NAMES clang-14 clang)
  if(MOEND_FUZZ_CXX AND MOEND_FUZZ_CC)
    # Can this clang link a libFuzzer binary (Debian: libclang-rt-14-dev)?
    # Only a success is cached: a failure is checked again at each configure.
    if(NOT MOEND_FUZZ_LINKS OR NOT MOEND_FUZZ_LINKS_WITH STREQUAL MOEND_FUZZ_CXX)
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
        unset(MOEND_FUZZ_LINKS CACHE)
        set(MOEND_FUZZ_LINKS OFF)
        set(moend_fuzz_why "${MOEND_FUZZ_CXX} cannot link -fsanitize=fuzzer: ${err}")
      endif()
      set(MOEND_FUZZ_LINKS_WITH ${MOEND_FUZZ_CXX} CACHE INTERNAL "")
    endif()
    set(MOEND_HAVE_FUZZ ${MOEND_FUZZ_LINKS})
  endif()
  if(NOT MOEND_FUZZ_CXX OR NOT MOEND_FUZZ_CC)
    set(moend_fuzz_why "no clang-14 / clang found")
  endif()
  if(NOT MOEND_HAVE_FUZZ)
    set(moend_fuzz_fix "Debian: apt-get install clang-14 libclang-rt-14-dev libomp-14-dev")
    if(MOEND_FUZZ STREQUAL "ON")
      message(FATAL_ERROR "MOEND_FUZZ=ON but the fuzzers cannot be built: ${moend_fuzz_why} "
                          "(${moend_fuzz_fix})")
    endif()
    message(WARNING "moend: the libFuzzer targets and their fuzz_* tests are left out: "
                    "${moend_fuzz_why} (${moend_fuzz_fix}; -DMOEND_FUZZ=OFF silences this)")
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
      ${CMAKE_BINARY_DIR}/fuzz/${target} ${CMAKE_SOURCE_DIR}/fuzz ${MOEND_FUZZ_RUNS}
      ${MOEND_FUZZ_MAX_SECONDS} ${CMAKE_BINARY_DIR}/fuzz/artifacts)
  # A fuzzer keeps a core busy: nothing else runs beside it, so that tests
  # sensitive to timing never share the machine with one (ctest -j).
  math(EXPR moend_fuzz_timeout "${MOEND_FUZZ_MAX_SECONDS} + 120")
  set_tests_properties(${target} PROPERTIES
    LABELS "reliability;fuzz"
    RUN_SERIAL ON
    TIMEOUT ${moend_fuzz_timeout})
endforeach()
