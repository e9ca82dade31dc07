from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("items/", views.items),
    path("items/new/", views.new_item),
    path("upload/", views.upload),
]
