"""The discrete-event simulator behind `apeinxfs sim` (the command line is simulate.py).

workload.py reads workload CSV files, engine.py runs them through the daemon's own
Runtime, kernel and sim driver on the virtual clock of loop.py's discrete-event loop,
fairness.py and report.py turn the final state into numbers. Not a second model of the
kernel: the kernel itself runs.
"""
