"""The traffic-sign world: a renderer of German road signs, a synthetic dataset, and training of ``sign-cnn``."""
