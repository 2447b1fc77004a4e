#!/bin/sh
# Fails on roughly one fire in three, to show failures in the history.
# "$1" "$2" are the job file's arguments; the JSON context is the last one.
eval "last=\${$#}"
echo "building the report ($1 $2); context: $last"
if [ $(( $$ % 3 )) -eq 0 ]; then
  echo "the report source is unavailable" >&2
  exit 3
fi
echo "report done"
