/* Runs the cmocka tests an argument list picks, so ctest can run one slow suite as several
 * entries side by side (tests/CMakeLists.txt). Each argument is a glob on test names: a plain one
 * includes, one starting with '!' excludes; with no includes every test not excluded runs, so a
 * test added later always runs in the entry that only excludes. */
#ifndef KILN_TEST_SELECT_H
#define KILN_TEST_SELECT_H

#include <fnmatch.h>
#include <stdbool.h>
#include <stddef.h>

static bool kt_selected(const char *name, int argc, char **argv) {
  bool any_include = false, included = false;
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '!') {
      if (fnmatch(argv[i] + 1, name, 0) == 0) return false;
    } else {
      any_include = true;
      if (fnmatch(argv[i], name, 0) == 0) included = true;
    }
  }
  return !any_include || included;
}

/* tests[] is rewritten in place to the selected ones. */
static int kt_run_selected(const char *group, struct CMUnitTest *tests, size_t n, int argc,
                           char **argv) {
  size_t kept = 0;
  for (size_t i = 0; i < n; i++)
    if (kt_selected(tests[i].name, argc, argv)) tests[kept++] = tests[i];
  return _cmocka_run_group_tests(group, tests, kept, NULL, NULL);
}

#endif
