from harness.models.transformer import GPT2, ModelConfig, Transformer, ViT, build_model, make_inputs

__all__ = ["GPT2", "ViT", "ModelConfig", "Transformer", "build_model", "make_inputs"]
