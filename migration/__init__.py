"""Migration from PyTorch to the engine: checkpoint conversion, module maps, porting and verification."""
