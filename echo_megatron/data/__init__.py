"""echo_megatron.data"""
