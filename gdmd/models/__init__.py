"""Built-in model families: tiny-unet (built in code) and sd3 (diffusers)."""
