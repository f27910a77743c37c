"""Worked examples of hpsearch's extension points, used by the README and the tests.

- `hpsearch.examples.custom`: seed 001 §4.8's custom optimizer (plain SGD as an
  `Optimizer` subclass) and a linear-decay scheduler, registered when the module is imported:
  a study file names it in `[plugins] modules = ["hpsearch.examples.custom"]`.
- `hpsearch.examples.models`: a model factory with a head and a searched width, named in a
  study file as `[model] factory = "hpsearch.examples.models:tabular_net"`.
"""
