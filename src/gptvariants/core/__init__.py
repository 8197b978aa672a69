"""The model: config, backbone, heads, objectives and the variant registry that composes them."""
