"""Exit statuses (docs/design.md §4.3): a stable contract for scripts and tests."""

EXIT_OK = 0
EXIT_INVALID = 1          # validation found problems (profiles validate, plan validate)
EXIT_USAGE = 2            # bad command line
EXIT_REJECTED = 3         # refused before any output
EXIT_STOPPED = 4          # stopped early by an operator or the patient
EXIT_FAULT = 5            # ended by a fault or interlock
EXIT_INTERNAL = 70        # a bug: reported in one line, never as a traceback
