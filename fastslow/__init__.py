"""fastslow: the FAST-GRPO and SFPO algorithms as plain tensor code (advantages, rewards, KL, curriculum, SFPO).

The modules land with their own issue; this package exists so the project installs as one.
"""
