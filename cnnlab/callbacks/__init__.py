"""Trainer callbacks: everything a run logs or draws beyond its metrics, one module per callback (base.py holds
the hooks). Which ones run is the `callbacks` config group (configs/callbacks/default.yaml), instantiated by
`cnnlab train` through `build`; a user adds their own with `callbacks.NAME._target_=my.module.MyCallback`."""
