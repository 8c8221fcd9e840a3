"""A small shop: orders whose every change is an event in the order's own stream.

The package is ``shop``, not ``models`` or ``tasks``: those are the outbox's own top-level
packages, and an application with modules of the same names could not import both.
"""

from __future__ import annotations

from shop.orders import OrderError, cancel_order, pay_order, place_order
from shop.schema import Order, OrderStatus, ShopBase

__all__ = [
    "Order",
    "OrderError",
    "OrderStatus",
    "ShopBase",
    "cancel_order",
    "pay_order",
    "place_order",
]
