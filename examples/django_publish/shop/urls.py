from django.urls import path
from orders import views

urlpatterns = [
    path("orders/", views.orders, name="orders"),
    path("orders/<int:order_id>/state", views.order_state, name="order-state"),
]
