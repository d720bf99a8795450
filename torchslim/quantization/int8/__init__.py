"""Int8 techniques: dynamic, weight-only, static (calibrated activations) and QAT, their modules, and the
Inductor backend that compiles them on CPU."""
