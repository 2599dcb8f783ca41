"""The papers' analyses as tools.

- `signal`: per-unit forward and backward norms through depth (v2 Sec. 3-4, Eq. 4-5, 8-9).
- `ablation`: runs the rows of v2 Tables 1 and 2 (`python -m resnet_identity.ablate`).
- `unit_ops`: a unit's operations in execution order, read off its traced code (v2 Fig. 4).
- `plots`: the papers' figure styles (error curves, per-unit series, unit diagrams).
- `paper`: the published figures everything above is compared against.
"""
