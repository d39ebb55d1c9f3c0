"""Deployment: export a run (ONNX, TorchScript, state_dict), and serve it over HTTP."""
