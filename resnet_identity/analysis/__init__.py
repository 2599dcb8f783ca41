"""The papers' analyses as tools.

- `signal`: per-unit forward and backward norms through depth (v2 Sec. 3-4, Eq. 4-5, 8-9).
- `layer_response`: the std of each layer's response of a trained net (v1 Fig. 7).
- `experiments`: every table and curves figure of both papers as rows to train
  (`python -m resnet_identity.reproduce`); `runs` trains them, `results` holds what each run
  produced, `report` sets it beside the paper's figures.
- `unit_ops`: a unit's operations in execution order, read off its traced code (v2 Fig. 4).
- `plots`: the papers' figure styles (error curves, per-unit series, unit diagrams, and the
  report's table and curves images).
- `paper`: the published figures everything above is compared against (docs/papers.md).
"""
