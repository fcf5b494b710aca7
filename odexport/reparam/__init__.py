"""reparam"""
