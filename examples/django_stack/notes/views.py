from django.shortcuts import redirect, render

from .forms import NoteForm
from .models import Note


def note_list(request):
    return render(request, "notes/list.html", {"notes": Note.objects.all()[:50]})


def note_new(request):
    if request.method == "POST":
        form = NoteForm(request.POST, request.FILES)
        if form.is_valid():
            form.save()
            return redirect("note_list")
    else:
        form = NoteForm()
    return render(request, "notes/form.html", {"form": form})
