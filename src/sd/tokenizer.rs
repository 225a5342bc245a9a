//! CLIP tokenizer (SD1.5 = openai/clip-vit-large-patch14 vocabulary), ids identical to CLIPTokenizerFast.
