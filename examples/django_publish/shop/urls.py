from django.urls import path
from orders import hooks, views

urlpatterns = [
    path("login", views.login_view, name="login"),
    path("tidings/connect", hooks.connect, name="tidings-connect"),
    path("tidings/subscribe", hooks.subscribe, name="tidings-subscribe"),
    path("orders/", views.orders, name="orders"),
    path("orders/<int:order_id>/state", views.order_state, name="order-state"),
]
