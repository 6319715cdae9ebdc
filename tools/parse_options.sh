#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a script after it has declared its options.
#
#   . tools/parse_options.sh || exit 1
#
# "--foo-bar VALUE" and "--foo_bar VALUE" both set the shell variable foo_bar,
# which must already exist (declared with a default): an unknown option fails
# and names itself, so a typo never silently runs with the default.
# "--help"/"-h" prints $help_message on stdout.  Parsing stops at the first argument that
# does not start with "--"; what remains is left in "$@" for the caller.

while true; do
  [ $# -eq 0 ] && break
  case "$1" in
    --help|-h)
      if [ -z "${help_message:-}" ]; then echo "No help found." 1>&2; exit 1; fi
      printf '%s\n' "${help_message}"  # on stdout: it is what was asked for
      exit 0 ;;
    --*=*)
      echo "${0##*/}: options are given as '--name value', not '--name=value' ($1)" 1>&2
      exit 1 ;;
    --*)
      name=$(echo "$1" | sed 's/^--//; s/-/_/g')
      # The variable must be declared by the caller; "${x+set}" distinguishes unset from empty.
      if ! eval '[ -n "${'"${name}"'+set}" ]'; then
        echo "${0##*/}: invalid option $1 (no variable '${name}' is declared)" 1>&2
        exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "${0##*/}: option $1 needs a value" 1>&2
        exit 1
      fi
      old_value="$(eval echo \"\$"${name}"\")"
      # Booleans stay booleans: catch "--force yes" before a script misreads it.
      if [ "${old_value}" = "true" ] || [ "${old_value}" = "false" ]; then
        if [ "$2" != "true" ] && [ "$2" != "false" ]; then
          echo "${0##*/}: option $1 is boolean; give true or false, not '$2'" 1>&2
          exit 1
        fi
      fi
      eval "${name}=\"\$2\""
      shift 2 ;;
    *) break ;;
  esac
done
true
