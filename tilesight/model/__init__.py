"""The building model: U-Net, training data, loop, metrics and export."""
