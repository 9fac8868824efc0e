"""What training costs, measured: ``memory`` (a step's activation memory), ``step`` (``lofi bench step``: a
step's time and memory per fidelity and precision) and ``cost`` (a sweep's CPU time estimated before it runs)."""
