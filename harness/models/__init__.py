from .transformer import GPT2, ViT, ModelConfig, Transformer, build_model, make_inputs

__all__ = ["GPT2", "ViT", "ModelConfig", "Transformer", "build_model", "make_inputs"]
