"""Pure math: tensors and callables in, numbers out (Hessian, NTK, frequency, condensation).

Modules: ``flat`` (params dict <-> flat vector), ``hvp`` (Hessian-vector products),
``lanczos`` (top-k eigenpairs, power iteration), ``preconditioner`` (Adam P, update, g²/v,
stability limits), ``finite`` (non-finite counts), ``directional`` (curvature along directions,
loss along a line), ``ntk`` and ``ntk_structured`` (empirical NTK, η_crit, loss split), ``agop``,
``frequency``, ``condensation``, ``robust_trend`` (the detector's trend fit, Mann-Kendall test).
Nothing here reads or writes files.
"""
