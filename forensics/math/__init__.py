"""Pure math: tensors and callables in, numbers out (Hessian, NTK, frequency, condensation)."""
