"""Stage runners, gates and the builtin backtest / stress stages."""
