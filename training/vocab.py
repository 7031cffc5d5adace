"""Every word the demo world's prompts may use: the text encoder's vocabulary for the demo model."""
COLORS = ("black", "white", "gray", "red", "green", "blue", "yellow", "orange", "purple", "cyan")
SHAPES = ("ball", "circle", "square", "box", "triangle")
MOTIONS = ("bouncing", "moving", "left", "right", "up", "down", "slowly", "quickly", "fast", "slow")
SCENE = ("pillar", "bar", "behind", "passing", "background", "backdrop")
FUNCTION_WORDS = ("a", "an", "the", "and", "on", "in", "with", "of", "front")

VOCAB = COLORS + ("grey",) + SHAPES + MOTIONS + SCENE + FUNCTION_WORDS
