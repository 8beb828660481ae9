from .config import ConfigError, TrainConfig
from .lora import export_trained, load_trained_lora
from .trainer import train


__all__ = ["ConfigError", "TrainConfig", "export_trained", "load_trained_lora", "train"]
