"""`cnnlab <command> --help`: the command's header, its config groups with their options and the composed config,
as Hydra's --help prints them, in a fraction of a second. (Hydra's help deep-copies the whole config repository
once per group: 3-10 s here. scripts/bench.py's startup section measures it.)"""

from __future__ import annotations

from pathlib import Path


def command_help(command: str, args: list[str], config_dir: str) -> str:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = [a for a in args if not a.startswith("-")]  # --help, -m/--multirun ...
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(command, overrides=overrides, return_hydra_config=True)
    header = OmegaConf.select(cfg, "hydra.help.header", default=None) or f"cnnlab {command}"
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    groups = sorted(p for p in Path(config_dir).iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    listing = [f"{g.name}: {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}" for g in groups]
    return "\n".join(
        [
            header,
            "== Configuration groups ==",
            "Compose your configuration from those groups (group=option)",
            "",
            *listing,
            "",
            "",
            "== Config ==",
            "Override anything in the config (foo.bar=value)",
            "",
            OmegaConf.to_yaml(cfg, resolve=False).rstrip(),
            "",
            "",
            "Powered by Hydra (https://hydra.cc)",
            "Use --hydra-help to view Hydra specific help",
            "",
            "",
        ]
    )
