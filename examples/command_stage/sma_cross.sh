#!/bin/sh
# A command stage in POSIX sh + awk: backtest an SMA cross (long or flat) on a CSV window.
#
#   sh sma_cross.sh DATA.csv START FAST SLOW
#
# DATA.csv: a header with date,open,high,low,close[,volume] (as `pipeline demo` writes it);
# START: the first date of the window (ISO; compared as text). The same rule and conventions as
# the builtin `sma_cross`: long after the fast SMA of closes crosses above the slow one, flat
# after it crosses below; a signal at a bar's close fills at the next open, all-in, no costs.
# It honours the command-stage contract: metrics as one JSON object in $PIPELINE_RESULT_FILE
# (or, without it, as the last line of stdout); exit 0; anything else is an error (stderr).
set -eu
if [ "$#" -ne 4 ]; then
    echo "usage: sh sma_cross.sh DATA.csv START FAST SLOW" >&2
    exit 2
fi
data=$1 start=$2 fast=$3 slow=$4
if [ ! -r "$data" ]; then
    echo "sma_cross.sh: $data: no such data file" >&2
    exit 2
fi
out=${PIPELINE_RESULT_FILE:-/dev/stdout}

LC_ALL=C awk -F, -v start="$start" -v fast="$fast" -v slow="$slow" '
BEGIN { cash = 10000; units = 0; held = 0; want = 0; prev = 0; peak = cash; last = cash }
NR == 1 {
    for (i = 1; i <= NF; i++) col[tolower($i)] = i
    if (!("open" in col) || !("close" in col)) { print "sma_cross.sh: no open/close columns" > "/dev/stderr"; exit 2 }
    next
}
$1 < start { next }
{
    n++
    open_ = $(col["open"]) + 0; close_ = $(col["close"]) + 0
    c[n] = close_
    sum_f += close_; if (n > fast) sum_f -= c[n - fast]
    sum_s += close_; if (n > slow) sum_s -= c[n - slow]

    # fill the previous close'"'"'s target at this open
    if (want != held) {
        if (want == 1) { units = cash / open_; cash = 0; entry = units * open_ }
        else { cash = units * open_; if (cash > entry) wins++; trades++; units = 0 }
        held = want
    }
    equity = cash + units * close_
    if (n > 1) { r = equity / last - 1; rs += r; rss += r * r; m++ }
    if (equity > peak) peak = equity
    dd = 1 - equity / peak; if (dd > maxdd) maxdd = dd
    last = equity

    # decide at this close
    state = 0
    if (n >= slow) { d = sum_f / fast - sum_s / slow; state = (d > 0) ? 1 : (d < 0) ? -1 : 0 }
    if (prev == -1 && state == 1) want = 1
    if (prev == 1 && state == -1) want = 0
    prev = state
}
END {
    if (n < 2) { print "sma_cross.sh: fewer than 2 bars from " start > "/dev/stderr"; exit 2 }
    mean = rs / m; var = (rss - m * mean * mean) / (m - 1)
    sharpe = (var > 0) ? mean / sqrt(var) * sqrt(252) : 0
    printf "{\"total_return\": %.12g, \"sharpe\": %.12g, \"max_drawdown\": %.12g, \"trades\": %d, \"win_rate\": %.12g, \"bars\": %d}\n", \
        last / 10000 - 1, sharpe, maxdd, trades, (trades ? wins / trades : 0), n
}' "$data" > "$out"
