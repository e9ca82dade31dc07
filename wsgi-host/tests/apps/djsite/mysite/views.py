import hashlib

from django import forms
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render

ITEMS = ["first", "second"]


class ItemForm(forms.Form):
    name = forms.CharField(max_length=20)
    quantity = forms.IntegerField(min_value=1)


def index(request):
    return HttpResponse("Django says hello to %s\n" % request.META.get("REMOTE_ADDR", "?"),
                        content_type="text/plain")


def items(request):
    return render(request, "items.html", {"items": ITEMS})


def new_item(request):
    if request.method == "POST":
        form = ItemForm(request.POST)
        if form.is_valid():
            ITEMS.append("%s x%d" % (form.cleaned_data["name"], form.cleaned_data["quantity"]))
            return HttpResponseRedirect("/items/")
    else:
        form = ItemForm()
    return render(request, "new_item.html", {"form": form})


def upload(request):
    if request.method != "POST":
        return render(request, "new_item.html", {"form": ItemForm()})
    f = request.FILES["doc"]
    data = f.read()
    return HttpResponse("%s %d %s %s\n" % (f.name, len(data), hashlib.sha256(data).hexdigest(),
                                            request.POST.get("note", "")),
                        content_type="text/plain")
