"""Speed, memory and accuracy of metatl side by side with its peers (``python -m benchmarks``).

A package only so that ``python -m benchmarks`` runs the harness (:mod:`benchmarks.run`) and
its modules import each other; every other script here still runs as
``python benchmarks/<script>.py``. Not installed with metatl.
"""
