from harness.models.transformer import GPT2, Llama, ModelConfig, Transformer, ViT, build_model, make_inputs

__all__ = ["GPT2", "Llama", "ModelConfig", "Transformer", "ViT", "build_model", "make_inputs"]
