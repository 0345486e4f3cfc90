"""Models shipped with morphreg: ``<name>.pt`` (weights, constructor config and model card, loadable with
``torch.load(..., weights_only=True)``) and ``<name>.json`` (the card). Made by the project's own training
code; ``benchmarks/prostate_model.py --ship RUN`` writes ``prostate-mr-trus`` from a run of
``configs/prostate_mr_trus.yaml``. ``morphreg models`` lists them."""
