"""echo_megatron.rl"""
