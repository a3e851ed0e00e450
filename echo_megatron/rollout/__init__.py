"""echo_megatron.rollout"""
