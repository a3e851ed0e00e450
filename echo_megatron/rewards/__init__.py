"""echo_megatron.rewards"""
