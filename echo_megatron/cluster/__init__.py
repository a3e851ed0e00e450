"""echo_megatron.cluster"""
