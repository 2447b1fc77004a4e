#!/bin/sh
# Prints what shardcron tells a script: the environment variables of DESIGN.md 9
# (the same context arrives as JSON in the last argument).
echo "hello from item $SHARDCRON_ITEM/$SHARDCRON_TOTAL ($SHARDCRON_ITEM_PARAM) of $SHARDCRON_JOB:" \
  "fire $SHARDCRON_FIRE_TIME, token $SHARDCRON_TOKEN, source $SHARDCRON_SOURCE," \
  "param $SHARDCRON_PARAM, on $SHARDCRON_INSTANCE"
