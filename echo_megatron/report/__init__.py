"""echo_megatron.report"""
