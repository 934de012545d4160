// check.hpp: CHECK for the host-side test programs. A failed check prints where and what, is
// counted in g_failures, and the program goes on, so one run reports every failure; each main
// turns g_failures into its exit code.
#pragma once

#include <cstdio>

inline int g_failures = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++g_failures;                                                                 \
        }                                                                                 \
    } while (0)
