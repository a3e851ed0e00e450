"""echo_megatron.eval"""
