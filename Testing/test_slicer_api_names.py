"""Every Qt/CTK/Slicer name the module's .ui and Python use exists, checked against Slicer 5.10's headers.

No Slicer runs here, so a misspelled signal or property (``currentNodeChange(vtkMRMLNode*)``,
``noneEnable``) would only show inside Slicer, as a connection that silently never fires or
a property that is silently not set.  This test reads every module file of the extension and its
.ui (``CervixAutoSeg.py``, ``CervixAutoSegReview.py``: :data:`MODULE_FILES`) and checks every widget class, property, signal, slot and method name
they use against the tables below, taken from the headers of the versions Slicer 5.10.0 is
built with (:data:`SOURCES`) by ``Testing/tools/extract_qt_api.py --python``.  When the
supported Slicer changes, regenerate the tables from that version's headers.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "CervixAutoSeg" / "CervixAutoSeg.py"
UI_FILE = ROOT / "CervixAutoSeg" / "Resources" / "UI" / "CervixAutoSeg.ui"
REVIEW_MODULE_FILE = ROOT / "CervixAutoSeg" / "CervixAutoSegReview.py"
REVIEW_UI_FILE = ROOT / "CervixAutoSeg" / "Resources" / "UI" / "CervixAutoSegReview.ui"
MODULE_FILES = ((MODULE_FILE, UI_FILE), (REVIEW_MODULE_FILE, REVIEW_UI_FILE))
"""Every scripted module of the extension with its .ui (test_every_module_file_is_checked keeps this whole)."""

SOURCES = {
    "Slicer": "github.com/Slicer/Slicer tag v5.10.0 (a2b6d082be04274a849884fbb1e85634a9df90fb): "
              "Libs/MRML/Widgets/qMRMLWidget.h, qMRMLNodeComboBox.h, qMRMLTableView.h, "
              "Base/QTCore/qSlicerCoreApplication.h, "
              "qSlicerBaseQTCorePythonQtDecorators.h, Base/QTGUI/qSlicerApplication.h, Base/Python/slicer/util.py, "
              "Base/Python/slicer/parameterNodeWrapper/wrapper.py",
    "CTK": "github.com/commontk/CTK dd4caeae7e979cf441e44ee85d3b0780120d113d, the commit Slicer v5.10.0 pins "
           "(SuperBuild/External_CTK.cmake): Libs/Widgets/ctkCollapsibleButton.h, "
           "Libs/DICOM/Core/ctkDICOMIndexer.h, ctkDICOMDatabase.h",
    "Qt": "qtbase 5.15 headers (Debian qtbase5-dev 5.15.8+dfsg-11+deb12u3; Slicer v5.10.0 requires Qt 5.15, "
          "CMakeLists.txt Slicer_REQUIRED_QT_VERSION): QtCore/qobject.h, qtimer.h, qcoreapplication.h, "
          "QtGui/qguiapplication.h, QtWidgets/qapplication.h, qwidget.h, qframe.h, qlabel.h, qabstractbutton.h, "
          "qpushbutton.h, qtoolbutton.h, qcheckbox.h, qcombobox.h, qprogressbar.h, qlayout.h, qboxlayout.h, "
          "qformlayout.h, qlineedit.h, qshortcut.h, qabstractscrollarea.h, qabstractitemview.h, qtableview.h, "
          "qtablewidget.h (QTableWidget, QTableWidgetItem)",
}


@dataclasses.dataclass(frozen=True)
class ClassApi:
    """What PythonQt and Qt Designer reach on one class (its own members; the base adds its own)."""

    base: str
    properties: str
    signals: str
    slots: str
    methods: str


# Qt (see SOURCES["Qt"]).
QT_API = {
    "QObject": ClassApi(
        base="",
        properties=(
            "objectName"),
        signals=(
            "destroyed() destroyed(QObject*) objectNameChanged(QString)"),
        slots=(
            "deleteLater()"),
        methods=(
            "blockSignals children connect disconnect dumpObjectInfo dumpObjectTree dynamicPropertyNames "
            "event eventFilter findChild findChildren inherits installEventFilter isWidgetType "
            "isWindowType killTimer moveToThread objectName parent property registerUserData "
            "removeEventFilter setObjectName setParent setProperty setUserData signalsBlocked startTimer "
            "thread tr trUtf8 userData"),
    ),
    "QTimer": ClassApi(
        base="QObject",
        properties=(
            "active interval remainingTime singleShot timerType"),
        signals=(
            "timeout()"),
        slots=(
            "start() start(int) stop()"),
        methods=(
            "callOnTimeout interval intervalAsDuration isActive isSingleShot remainingTime "
            "remainingTimeAsDuration setInterval setSingleShot setTimerType singleShot start timerId "
            "timerType"),
    ),
    "QCoreApplication": ClassApi(
        base="QObject",
        properties=(
            "applicationName applicationVersion organizationDomain organizationName quitLockEnabled"),
        signals=(
            "aboutToQuit() applicationNameChanged() applicationVersionChanged() "
            "organizationDomainChanged() organizationNameChanged()"),
        slots=(
            "quit()"),
        methods=(
            "addLibraryPath applicationDirPath applicationFilePath applicationName applicationPid "
            "applicationVersion arguments closingDown eventDispatcher exec exit flush hasPendingEvents "
            "installNativeEventFilter installTranslator instance isQuitLockEnabled isSetuidAllowed "
            "libraryPaths notify organizationDomain organizationName postEvent processEvents "
            "removeLibraryPath removeNativeEventFilter removePostedEvents removeTranslator sendEvent "
            "sendPostedEvents setApplicationName setApplicationVersion setAttribute setEventDispatcher "
            "setLibraryPaths setOrganizationDomain setOrganizationName setQuitLockEnabled "
            "setSetuidAllowed startingUp testAttribute translate"),
    ),
    "QGuiApplication": ClassApi(
        base="QCoreApplication",
        properties=(
            "applicationDisplayName desktopFileName layoutDirection platformName primaryScreen "
            "quitOnLastWindowClosed windowIcon"),
        signals=(
            "applicationDisplayNameChanged() applicationStateChanged(Qt::ApplicationState) "
            "commitDataRequest(QSessionManager) focusObjectChanged(QObject*) "
            "focusWindowChanged(QWindow*) fontChanged(QFont) fontDatabaseChanged() lastWindowClosed() "
            "layoutDirectionChanged(Qt::LayoutDirection) paletteChanged(QPalette) "
            "primaryScreenChanged(QScreen*) saveStateRequest(QSessionManager) screenAdded(QScreen*) "
            "screenRemoved(QScreen*)"),
        slots=(
            ""),
        methods=(
            "allWindows applicationDisplayName applicationState changeOverrideCursor clipboard "
            "desktopFileName desktopSettingsAware devicePixelRatio exec focusObject focusWindow font "
            "highDpiScaleFactorRoundingPolicy inputMethod isFallbackSessionManagementEnabled "
            "isLeftToRight isRightToLeft isSavingSession isSessionRestored keyboardModifiers "
            "layoutDirection modalWindow mouseButtons notify overrideCursor palette platformFunction "
            "platformName platformNativeInterface primaryScreen queryKeyboardModifiers "
            "quitOnLastWindowClosed restoreOverrideCursor screenAt screens sessionId sessionKey "
            "setApplicationDisplayName setDesktopFileName setDesktopSettingsAware "
            "setFallbackSessionManagementEnabled setFont setHighDpiScaleFactorRoundingPolicy "
            "setLayoutDirection setOverrideCursor setPalette setQuitOnLastWindowClosed setWindowIcon "
            "styleHints sync topLevelAt topLevelWindows windowIcon"),
    ),
    "QApplication": ClassApi(
        base="QGuiApplication",
        properties=(
            "autoSipEnabled cursorFlashTime doubleClickInterval globalStrut keyboardInputInterval "
            "startDragDistance startDragTime styleSheet wheelScrollLines windowIcon"),
        signals=(
            "focusChanged(QWidget*,QWidget*)"),
        slots=(
            "aboutQt() autoSipEnabled() closeAllWindows() setAutoSipEnabled(const bool) "
            "setStyleSheet(QString)"),
        methods=(
            "activeModalWidget activePopupWidget activeWindow alert allWidgets beep colorSpec "
            "cursorFlashTime desktop doubleClickInterval exec focusWidget font fontMetrics globalStrut "
            "isEffectEnabled keyboardInputDirection keyboardInputInterval keyboardInputLocale "
            "keypadNavigationEnabled navigationMode notify palette setActiveWindow setColorSpec "
            "setCursorFlashTime setDoubleClickInterval setEffectEnabled setFont setGlobalStrut "
            "setGraphicsSystem setKeyboardInputInterval setKeypadNavigationEnabled setNavigationMode "
            "setPalette setStartDragDistance setStartDragTime setStyle setWheelScrollLines setWindowIcon "
            "startDragDistance startDragTime style styleSheet syncX topLevelAt topLevelWidgets "
            "wheelScrollLines widgetAt windowIcon"),
    ),
    "QWidget": ClassApi(
        base="QObject",
        properties=(
            "acceptDrops accessibleDescription accessibleName autoFillBackground baseSize childrenRect "
            "childrenRegion contextMenuPolicy cursor enabled focus focusPolicy font frameGeometry "
            "frameSize fullScreen geometry height inputMethodHints isActiveWindow layoutDirection locale "
            "maximized maximumHeight maximumSize maximumWidth minimized minimumHeight minimumSize "
            "minimumSizeHint minimumWidth modal mouseTracking normalGeometry palette pos rect size "
            "sizeHint sizeIncrement sizePolicy statusTip styleSheet tabletTracking toolTip "
            "toolTipDuration updatesEnabled visible whatsThis width windowFilePath windowIcon "
            "windowIconText windowModality windowModified windowOpacity windowTitle x y"),
        signals=(
            "customContextMenuRequested(QPoint) windowIconChanged(QIcon) windowIconTextChanged(QString) "
            "windowTitleChanged(QString)"),
        slots=(
            "close() hide() lower() raise() repaint() setDisabled(bool) setEnabled(bool) setFocus() "
            "setHidden(bool) setStyleSheet(QString) setVisible(bool) setWindowModified(bool) "
            "setWindowTitle(QString) show() showFullScreen() showMaximized() showMinimized() "
            "showNormal() update()"),
        methods=(
            "acceptDrops accessibleDescription accessibleName actions activateWindow addAction "
            "addActions adjustSize autoFillBackground backgroundRole backingStore baseSize childAt "
            "childrenRect childrenRegion clearFocus clearMask contentsMargins contentsRect "
            "contextMenuPolicy createWinId createWindowContainer cursor devType effectiveWinId "
            "ensurePolished find focusPolicy focusProxy focusWidget font fontInfo fontMetrics "
            "foregroundRole frameGeometry frameSize geometry getContentsMargins grab grabGesture "
            "grabKeyboard grabMouse grabShortcut graphicsEffect graphicsProxyWidget hasEditFocus "
            "hasFocus hasHeightForWidth hasMouseTracking hasTabletTracking height heightForWidth "
            "inputMethodHints inputMethodQuery insertAction insertActions internalWinId isActiveWindow "
            "isAncestorOf isEnabled isEnabledTo isEnabledToTLW isFullScreen isHidden isLeftToRight "
            "isMaximized isMinimized isModal isRightToLeft isTopLevel isVisible isVisibleTo isWindow "
            "isWindowModified keyboardGrabber layout layoutDirection locale mapFrom mapFromGlobal "
            "mapFromParent mapTo mapToGlobal mapToParent mask maximumHeight maximumSize maximumWidth "
            "minimumHeight minimumSize minimumSizeHint minimumWidth mouseGrabber move nativeParentWidget "
            "nextInFocusChain normalGeometry overrideWindowFlags overrideWindowState paintEngine palette "
            "parentWidget pos previousInFocusChain rect releaseKeyboard releaseMouse releaseShortcut "
            "removeAction render repaint resize restoreGeometry saveGeometry screen scroll "
            "setAcceptDrops setAccessibleDescription setAccessibleName setAttribute "
            "setAutoFillBackground setBackgroundRole setBaseSize setContentsMargins setContextMenuPolicy "
            "setCursor setEditFocus setFixedHeight setFixedSize setFixedWidth setFocus setFocusPolicy "
            "setFocusProxy setFont setForegroundRole setGeometry setGraphicsEffect setInputMethodHints "
            "setLayout setLayoutDirection setLocale setMask setMaximumHeight setMaximumSize "
            "setMaximumWidth setMinimumHeight setMinimumSize setMinimumWidth setMouseTracking setPalette "
            "setParent setShortcutAutoRepeat setShortcutEnabled setSizeIncrement setSizePolicy "
            "setStatusTip setStyle setTabOrder setTabletTracking setToolTip setToolTipDuration "
            "setUpdatesEnabled setWhatsThis setWindowFilePath setWindowFlag setWindowFlags setWindowIcon "
            "setWindowIconText setWindowModality setWindowOpacity setWindowRole setWindowState setupUi "
            "size sizeHint sizeIncrement sizePolicy stackUnder statusTip style styleSheet testAttribute "
            "toolTip toolTipDuration topLevelWidget underMouse ungrabGesture unsetCursor "
            "unsetLayoutDirection unsetLocale update updateGeometry updatesEnabled visibleRegion "
            "whatsThis width winId window windowFilePath windowFlags windowHandle windowIcon "
            "windowIconText windowModality windowOpacity windowRole windowState windowTitle windowType x "
            "y"),
    ),
    "QFrame": ClassApi(
        base="QWidget",
        properties=(
            "frameRect frameShadow frameShape frameWidth lineWidth midLineWidth"),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "frameRect frameShadow frameShape frameStyle frameWidth lineWidth midLineWidth setFrameRect "
            "setFrameShadow setFrameShape setFrameStyle setLineWidth setMidLineWidth sizeHint"),
    ),
    "QLabel": ClassApi(
        base="QFrame",
        properties=(
            "alignment hasSelectedText indent margin openExternalLinks pixmap scaledContents "
            "selectedText text textFormat textInteractionFlags wordWrap"),
        signals=(
            "linkActivated(QString) linkHovered(QString)"),
        slots=(
            "clear() setMovie(QMovie*) setNum(double) setNum(int) setPicture(QPicture) "
            "setPixmap(QPixmap) setText(QString)"),
        methods=(
            "alignment buddy hasScaledContents hasSelectedText heightForWidth indent margin "
            "minimumSizeHint movie openExternalLinks picture pixmap selectedText selectionStart "
            "setAlignment setBuddy setIndent setMargin setOpenExternalLinks setScaledContents "
            "setSelection setTextFormat setTextInteractionFlags setWordWrap sizeHint text textFormat "
            "textInteractionFlags wordWrap"),
    ),
    "QAbstractButton": ClassApi(
        base="QWidget",
        properties=(
            "autoExclusive autoRepeat autoRepeatDelay autoRepeatInterval checkable checked down icon "
            "iconSize shortcut text"),
        signals=(
            "clicked() clicked(bool) pressed() released() toggled(bool)"),
        slots=(
            "animateClick() animateClick(int) click() setChecked(bool) setIconSize(QSize) toggle()"),
        methods=(
            "autoExclusive autoRepeat autoRepeatDelay autoRepeatInterval group icon iconSize isCheckable "
            "isChecked isDown setAutoExclusive setAutoRepeat setAutoRepeatDelay setAutoRepeatInterval "
            "setCheckable setDown setIcon setShortcut setText shortcut text"),
    ),
    "QPushButton": ClassApi(
        base="QAbstractButton",
        properties=(
            "autoDefault default flat"),
        signals=(
            ""),
        slots=(
            "showMenu()"),
        methods=(
            "autoDefault isDefault isFlat menu minimumSizeHint setAutoDefault setDefault setFlat setMenu "
            "sizeHint"),
    ),
    "QToolButton": ClassApi(
        base="QAbstractButton",
        properties=(
            "arrowType autoRaise popupMode toolButtonStyle"),
        signals=(
            "triggered(QAction*)"),
        slots=(
            "setDefaultAction(QAction*) setToolButtonStyle(Qt::ToolButtonStyle) showMenu()"),
        methods=(
            "arrowType autoRaise defaultAction menu minimumSizeHint popupMode setArrowType setAutoRaise "
            "setMenu setPopupMode sizeHint toolButtonStyle"),
    ),
    "QCheckBox": ClassApi(
        base="QAbstractButton",
        properties=(
            "tristate"),
        signals=(
            "stateChanged(int)"),
        slots=(
            ""),
        methods=(
            "checkState isTristate minimumSizeHint setCheckState setTristate sizeHint"),
    ),
    "QComboBox": ClassApi(
        base="QWidget",
        properties=(
            "autoCompletion autoCompletionCaseSensitivity count currentData currentIndex currentText "
            "duplicatesEnabled editable frame iconSize insertPolicy maxCount maxVisibleItems "
            "minimumContentsLength modelColumn placeholderText sizeAdjustPolicy"),
        signals=(
            "activated(QString) activated(int) currentIndexChanged(QString) currentIndexChanged(int) "
            "currentTextChanged(QString) editTextChanged(QString) highlighted(QString) highlighted(int) "
            "textActivated(QString) textHighlighted(QString)"),
        slots=(
            "clear() clearEditText() setCurrentIndex(int) setCurrentText(QString) setEditText(QString)"),
        methods=(
            "addItem addItems autoCompletion autoCompletionCaseSensitivity completer count currentData "
            "currentIndex currentText duplicatesEnabled event findData findText hasFrame hidePopup "
            "iconSize inputMethodQuery insertItem insertItems insertPolicy insertSeparator isEditable "
            "itemData itemDelegate itemIcon itemText lineEdit maxCount maxVisibleItems "
            "minimumContentsLength minimumSizeHint model modelColumn placeholderText removeItem "
            "rootModelIndex setAutoCompletion setAutoCompletionCaseSensitivity setCompleter "
            "setDuplicatesEnabled setEditable setFrame setIconSize setInsertPolicy setItemData "
            "setItemDelegate setItemIcon setItemText setLineEdit setMaxCount setMaxVisibleItems "
            "setMinimumContentsLength setModel setModelColumn setPlaceholderText setRootModelIndex "
            "setSizeAdjustPolicy setValidator setView showPopup sizeAdjustPolicy sizeHint validator view"),
    ),
    "QProgressBar": ClassApi(
        base="QWidget",
        properties=(
            "alignment format invertedAppearance maximum minimum orientation text textDirection "
            "textVisible value"),
        signals=(
            "valueChanged(int)"),
        slots=(
            "reset() setMaximum(int) setMinimum(int) setOrientation(Qt::Orientation) setRange(int,int) "
            "setValue(int)"),
        methods=(
            "alignment format invertedAppearance isTextVisible maximum minimum minimumSizeHint "
            "orientation resetFormat setAlignment setFormat setInvertedAppearance setTextDirection "
            "setTextVisible sizeHint text textDirection value"),
    ),
    "QLayout": ClassApi(
        base="QObject",
        properties=(
            "margin sizeConstraint spacing"),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "activate addItem addWidget closestAcceptableSize contentsMargins contentsRect controlTypes "
            "count expandingDirections geometry getContentsMargins indexOf invalidate isEmpty isEnabled "
            "itemAt layout margin maximumSize menuBar minimumSize parentWidget removeItem removeWidget "
            "replaceWidget setAlignment setContentsMargins setEnabled setGeometry setMargin setMenuBar "
            "setSizeConstraint setSpacing sizeConstraint spacing takeAt totalHeightForWidth "
            "totalMaximumSize totalMinimumSize totalSizeHint update"),
    ),
    "QBoxLayout": ClassApi(
        base="QLayout",
        properties=(
            ""),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "addItem addLayout addSpacerItem addSpacing addStretch addStrut addWidget count direction "
            "expandingDirections hasHeightForWidth heightForWidth insertItem insertLayout "
            "insertSpacerItem insertSpacing insertStretch insertWidget invalidate itemAt maximumSize "
            "minimumHeightForWidth minimumSize setDirection setGeometry setSpacing setStretch "
            "setStretchFactor sizeHint spacing stretch takeAt"),
    ),
    "QVBoxLayout": ClassApi(
        base="QBoxLayout",
        properties=(
            ""),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            ""),
    ),
    "QHBoxLayout": ClassApi(
        base="QBoxLayout",
        properties=(
            ""),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            ""),
    ),
    "QFormLayout": ClassApi(
        base="QLayout",
        properties=(
            "fieldGrowthPolicy formAlignment horizontalSpacing labelAlignment rowWrapPolicy "
            "verticalSpacing"),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "addItem addRow count dump expandingDirections fieldGrowthPolicy formAlignment "
            "getItemPosition getLayoutPosition getWidgetPosition hasHeightForWidth heightForWidth "
            "horizontalSpacing insertRow invalidate itemAt labelAlignment labelForField minimumSize "
            "removeRow rowCount rowWrapPolicy setFieldGrowthPolicy setFormAlignment setGeometry "
            "setHorizontalSpacing setItem setLabelAlignment setLayout setRowWrapPolicy setSpacing "
            "setVerticalSpacing setWidget sizeHint spacing takeAt takeRow verticalSpacing"),
    ),
    # The review panel (CervixAutoSegReview.ui / .py): qlineedit.h, qshortcut.h, qabstractscrollarea.h,
    # qabstractitemview.h, qtableview.h of the same qtbase.
    "QAbstractScrollArea": ClassApi(
        base="QFrame",
        properties=(
            "horizontalScrollBarPolicy sizeAdjustPolicy verticalScrollBarPolicy"),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "addScrollBarWidget cornerWidget horizontalScrollBar horizontalScrollBarPolicy "
            "maximumViewportSize minimumSizeHint scrollBarWidgets setCornerWidget setHorizontalScrollBar "
            "setHorizontalScrollBarPolicy setSizeAdjustPolicy setVerticalScrollBar "
            "setVerticalScrollBarPolicy setViewport setupViewport sizeAdjustPolicy sizeHint "
            "verticalScrollBar verticalScrollBarPolicy viewport"),
    ),
    "QAbstractItemView": ClassApi(
        base="QAbstractScrollArea",
        properties=(
            "alternatingRowColors autoScroll autoScrollMargin defaultDropAction dragDropMode "
            "dragDropOverwriteMode dragEnabled editTriggers horizontalScrollMode iconSize "
            "selectionBehavior selectionMode showDropIndicator tabKeyNavigation textElideMode "
            "verticalScrollMode"),
        signals=(
            "activated(QModelIndex) clicked(QModelIndex) doubleClicked(QModelIndex) entered(QModelIndex) "
            "iconSizeChanged(QSize) pressed(QModelIndex) viewportEntered()"),
        slots=(
            "clearSelection() doItemsLayout() edit(QModelIndex) reset() scrollToBottom() scrollToTop() "
            "selectAll() setCurrentIndex(QModelIndex) setRootIndex(QModelIndex) update(QModelIndex)"),
        methods=(
            "alternatingRowColors autoScrollMargin closePersistentEditor currentIndex defaultDropAction "
            "dragDropMode dragDropOverwriteMode dragEnabled editTriggers hasAutoScroll "
            "horizontalScrollMode iconSize indexAt indexWidget inputMethodQuery isPersistentEditorOpen "
            "itemDelegate itemDelegateForColumn itemDelegateForRow keyboardSearch model "
            "openPersistentEditor resetHorizontalScrollMode resetVerticalScrollMode rootIndex scrollTo "
            "selectionBehavior selectionMode selectionModel setAlternatingRowColors setAutoScroll "
            "setAutoScrollMargin setDefaultDropAction setDragDropMode setDragDropOverwriteMode "
            "setDragEnabled setDropIndicatorShown setEditTriggers setHorizontalScrollMode setIconSize "
            "setIndexWidget setItemDelegate setItemDelegateForColumn setItemDelegateForRow setModel "
            "setSelectionBehavior setSelectionMode setSelectionModel setTabKeyNavigation "
            "setTextElideMode setVerticalScrollMode showDropIndicator sizeHintForColumn sizeHintForIndex "
            "sizeHintForRow tabKeyNavigation textElideMode verticalScrollMode visualRect"),
    ),
    "QTableView": ClassApi(
        base="QAbstractItemView",
        properties=(
            "cornerButtonEnabled gridStyle showGrid sortingEnabled wordWrap"),
        signals=(
            ""),
        slots=(
            "hideColumn(int) hideRow(int) resizeColumnToContents(int) resizeColumnsToContents() "
            "resizeRowToContents(int) resizeRowsToContents() selectColumn(int) selectRow(int) "
            "setShowGrid(bool) showColumn(int) showRow(int) sortByColumn(int) "
            "sortByColumn(int,Qt::SortOrder)"),
        methods=(
            "clearSpans columnAt columnSpan columnViewportPosition columnWidth doItemsLayout gridStyle "
            "horizontalHeader indexAt isColumnHidden isCornerButtonEnabled isRowHidden isSortingEnabled "
            "rowAt rowHeight rowSpan rowViewportPosition scrollTo setColumnHidden setColumnWidth "
            "setCornerButtonEnabled setGridStyle setHorizontalHeader setModel setRootIndex setRowHeight "
            "setRowHidden setSelectionModel setSortingEnabled setSpan setVerticalHeader setWordWrap "
            "showGrid verticalHeader visualRect wordWrap"),
    ),
    "QLineEdit": ClassApi(
        base="QWidget",
        properties=(
            "acceptableInput alignment clearButtonEnabled cursorMoveStyle cursorPosition displayText "
            "dragEnabled echoMode frame hasSelectedText inputMask maxLength modified placeholderText "
            "readOnly redoAvailable selectedText text undoAvailable"),
        signals=(
            "cursorPositionChanged(int,int) editingFinished() inputRejected() returnPressed() "
            "selectionChanged() textChanged(QString) textEdited(QString)"),
        slots=(
            "clear() copy() cut() paste() redo() selectAll() setText(QString) undo()"),
        methods=(
            "addAction alignment backspace completer createStandardContextMenu cursorBackward "
            "cursorForward cursorMoveStyle cursorPosition cursorPositionAt cursorWordBackward "
            "cursorWordForward del deselect displayText dragEnabled echoMode end event getTextMargins "
            "hasAcceptableInput hasFrame hasSelectedText home inputMask inputMethodQuery insert "
            "isClearButtonEnabled isModified isReadOnly isRedoAvailable isUndoAvailable maxLength "
            "minimumSizeHint placeholderText selectedText selectionEnd selectionLength selectionStart "
            "setAlignment setClearButtonEnabled setCompleter setCursorMoveStyle setCursorPosition "
            "setDragEnabled setEchoMode setFrame setInputMask setMaxLength setModified "
            "setPlaceholderText setReadOnly setSelection setTextMargins setValidator sizeHint text "
            "textMargins validator"),
    ),
    "QShortcut": ClassApi(
        base="QObject",
        properties=(
            "autoRepeat context enabled key whatsThis"),
        signals=(
            "activated() activatedAmbiguously()"),
        slots=(
            ""),
        methods=(
            "autoRepeat context id isEnabled key parentWidget setAutoRepeat setContext setEnabled setKey "
            "setWhatsThis whatsThis"),
    ),
    "QTableWidget": ClassApi(
        base="QTableView",
        properties=(
            "columnCount rowCount"),
        signals=(
            "cellActivated(int,int) cellChanged(int,int) cellClicked(int,int) cellDoubleClicked(int,int) "
            "cellEntered(int,int) cellPressed(int,int) currentCellChanged(int,int,int,int) "
            "currentItemChanged(QTableWidgetItem*,QTableWidgetItem*) itemActivated(QTableWidgetItem*) "
            "itemChanged(QTableWidgetItem*) itemClicked(QTableWidgetItem*) "
            "itemDoubleClicked(QTableWidgetItem*) itemEntered(QTableWidgetItem*) "
            "itemPressed(QTableWidgetItem*) itemSelectionChanged()"),
        slots=(
            "clear() clearContents() insertColumn(int) insertRow(int) removeColumn(int) removeRow(int) "
            "scrollToItem(const QTableWidgetItem*) "
            "scrollToItem(const QTableWidgetItem*,QAbstractItemView::ScrollHint)"),
        methods=(
            "cellWidget closePersistentEditor column columnCount currentColumn currentItem currentRow "
            "editItem findItems horizontalHeaderItem isItemSelected isPersistentEditorOpen "
            "isSortingEnabled item itemAt itemPrototype openPersistentEditor removeCellWidget row "
            "rowCount selectedItems selectedRanges setCellWidget setColumnCount setCurrentCell "
            "setCurrentItem setHorizontalHeaderItem setHorizontalHeaderLabels setItem setItemPrototype "
            "setItemSelected setRangeSelected setRowCount setSortingEnabled setVerticalHeaderItem "
            "setVerticalHeaderLabels sortItems takeHorizontalHeaderItem takeItem takeVerticalHeaderItem "
            "verticalHeaderItem visualColumn visualItemRect visualRow"),
    ),
    "QTableWidgetItem": ClassApi(
        base="",
        properties=(
            ""),
        signals=(
            ""),
        slots=(
            ""),
        methods=(
            "background backgroundColor checkState clone column data flags font foreground icon "
            "isSelected read row setBackground setBackgroundColor setCheckState setData setFlags setFont "
            "setForeground setIcon setSelected setSizeHint setStatusTip setText setTextAlignment "
            "setTextColor setToolTip setWhatsThis sizeHint statusTip tableWidget text textAlignment "
            "textColor toolTip type whatsThis write"),
    ),
}

# CTK (see SOURCES["CTK"]).
CTK_API = {
    "ctkCollapsibleButton": ClassApi(
        base="QAbstractButton",
        properties=(
            "buttonTextAlignment collapsed collapsedHeight contentsFrameShadow contentsFrameShape "
            "contentsLineWidth contentsMidLineWidth flat indicatorAlignment"),
        signals=(
            "contentsCollapsed(bool)"),
        slots=(
            ""),
        methods=(
            "buttonTextAlignment collapsed collapsedHeight contentsFrameShadow contentsFrameShape "
            "contentsLineWidth contentsMidLineWidth event eventFilter indicatorAlignment isFlat "
            "minimumSizeHint setButtonTextAlignment setCollapsed setCollapsedHeight "
            "setContentsFrameShadow setContentsFrameShape setContentsLineWidth setContentsMidLineWidth "
            "setFlat setIndicatorAlignment setVisible sizeHint"),
    ),
    "ctkDICOMIndexer": ClassApi(
        base="QObject",
        properties=(
            "backgroundImportEnabled followSymlinks importing"),
        signals=(
            "indexingComplete(int,int,int,int) progress(int) progressDetail(QString) "
            "progressStep(QString) updatingDatabase(bool)"),
        slots=(
            "cancel()"),
        methods=(
            "addDicomdir addDirectory addFile addListOfFiles database followSymlinks "
            "isBackgroundImportEnabled isImporting setBackgroundImportEnabled setDatabase "
            "setFollowSymlinks waitForImportFinished"),
    ),
    "ctkDICOMDatabase": ClassApi(
        base="QObject",
        properties=(
            "databaseDirectory databaseFilename isInMemory isOpen lastError loadedSeries "
            "patientFieldNames seriesFieldNames studyFieldNames tagsToExcludeFromStorage tagsToPrecache "
            "useShortStoragePath visibleSeries"),
        signals=(
            "closed() connectionNameAdded(int,QString,QString,QString,QString) databaseChanged() "
            "displayedFieldsUpdateProgress(int) displayedFieldsUpdateStarted() displayedFieldsUpdated() "
            "instanceAdded(QString) opened() patientAdded(int,QString,QString,QString) "
            "patientRemoved(QString) schemaUpdateProgress(QString) schemaUpdateProgress(int) "
            "schemaUpdateStarted(int) schemaUpdated() seriesAdded(QString) seriesRemoved(QString) "
            "studyAdded(QString) studyRemoved(QString) tagsToExcludeFromStorageChanged() "
            "tagsToPrecacheChanged()"),
        slots=(
            ""),
        methods=(
            "allFiles allFilesModifiedTimes cacheTag cacheTags cachedTag cleanup closeDatabase "
            "compositePatientID connectionsInformationForPatient database databaseDirectory "
            "databaseFilename defaultSchemaFile descriptionForSeries descriptionForStudy "
            "descriptionsForFile displayedFieldGenerator displayedNameForField displayedNameForPatient "
            "fieldForPatient fieldForSeries fieldForStudy fileExistsAndUpToDate fileForInstance "
            "fileValue fileValueExists filesForSeries formatForField getCachedTags groupElementToTag "
            "headerKeys headerValue imagesCount initializeDatabase initializeTagCache insert "
            "insertDateTimeForInstance insertDateTimeForPatient insertDateTimeForSeries "
            "insertDateTimeForStudy instanceForFile instanceForURL instanceValue instanceValueExists "
            "instancesForSeries isDisplayedFieldsTableAvailable isInMemory isOpen lastError "
            "loadFileHeader loadInstanceHeader loadedSeries nameForPatient openDatabase "
            "patientFieldNames patientForStudy patients patientsCount prepareInsert removeCachedTags "
            "removePatient removeSeries removeStudy schemaVersion schemaVersionLoaded seriesCount "
            "seriesFieldNames seriesForFile seriesForStudy setDisplayedNameForField setFormatForField "
            "setLoadedSeries setSchemaVersion setTagsToExcludeFromStorage setTagsToPrecache "
            "setThumbnailGenerator setUseShortStoragePath setVisibilityForField setVisibleSeries "
            "setWeightForField storeThumbnailFile studiesCount studiesForPatient studyFieldNames "
            "studyForSeries tagCacheExists tagToGroupElement tagsToExcludeFromStorage tagsToPrecache "
            "thumbnailGenerator thumbnailPathForInstance updateConnectionsForPatient "
            "updateDisplayedFields updateSchema updateSchemaIfNeeded urlForInstance urlsForSeries "
            "useShortStoragePath visibilityForField visibleSeries weightForField"),
    ),
}

# Slicer (see SOURCES["Slicer"]); testingEnabled is a PythonQt decorator of qSlicerCoreApplication.
SLICER_API = {
    "qMRMLWidget": ClassApi(
        base="QWidget",
        properties=(
            ""),
        signals=(
            "mrmlSceneChanged(vtkMRMLScene*)"),
        slots=(
            "setMRMLScene(vtkMRMLScene*)"),
        methods=(
            "mrmlScene pixmapFromIcon postInitializeApplication preInitializeApplication"),
    ),
    "qMRMLNodeComboBox": ClassApi(
        base="QWidget",
        properties=(
            "addEnabled baseName currentNodeID currentNodeId editEnabled hideChildNodeTypes "
            "interactionNodeSingletonTag nodeTypes noneDisplay noneEnabled removeEnabled renameEnabled "
            "selectNodeUponCreation showChildNodeTypes showHidden sizeAdjustPolicy"),
        signals=(
            "currentNodeChanged(bool) currentNodeChanged(vtkMRMLNode*) currentNodeIDChanged(QString) "
            "currentNodeRenamed(QString) nodeAboutToBeEdited(vtkMRMLNode*) "
            "nodeAboutToBeRemoved(vtkMRMLNode*) nodeActivated(vtkMRMLNode*) nodeAdded(vtkMRMLNode*) "
            "nodeAddedByUser(vtkMRMLNode*)"),
        slots=(
            "addNode() addNode(QString) editCurrentNode() removeCurrentNode() renameCurrentNode() "
            "setCurrentNode(QString) setCurrentNode(vtkMRMLNode*) setCurrentNodeID(QString) "
            "setCurrentNodeIndex(int) setMRMLScene(vtkMRMLScene*)"),
        methods=(
            "addAttribute addEnabled addMenuAction baseName currentNode currentNodeID currentNodeId "
            "editEnabled hideChildNodeTypes interactionNodeSingletonTag model mrmlScene nodeCount "
            "nodeFactory nodeFromIndex nodeTypeLabel nodeTypes nodes noneDisplay noneEnabled "
            "removeAttribute removeEnabled renameEnabled sceneModel selectNodeUponCreation setAddEnabled "
            "setBaseName setEditEnabled setHideChildNodeTypes setInteractionNodeSingletonTag "
            "setNodeTypeLabel setNodeTypes setNoneDisplay setNoneEnabled setRemoveEnabled "
            "setRenameEnabled setSelectNodeUponCreation setShowChildNodeTypes setShowHidden "
            "setSizeAdjustPolicy showChildNodeTypes showHidden sizeAdjustPolicy sortFilterProxyModel"),
    ),
    "qSlicerCoreApplication": ClassApi(
        base="QApplication",
        properties=(
            "applicationLocale applicationLocaleName arch cachePath defaultScenePath "
            "documentationBaseUrl documentationLanguage documentationVersion extensionsInstallPath "
            "intDir isCustomMainApplication isInstalled isUsageLoggingSupported "
            "launcherExecutableFilePath launcherSettingsFilePath mainApplicationDisplayName "
            "mainApplicationMajorVersion mainApplicationMinorVersion mainApplicationName "
            "mainApplicationPatchVersion mainApplicationRepositoryRevision mainApplicationRepositoryUrl "
            "mainApplicationRevision majorVersion minorVersion os platform releaseType repositoryBranch "
            "repositoryRevision repositoryUrl revision slicerDefaultSettingsFilePath slicerHome "
            "slicerRevisionUserSettingsFilePath slicerSharePath slicerUserSettingsFilePath "
            "startupWorkingPath temporaryPath"),
        signals=(
            "invokeEventRequested(unsigned int,void*,unsigned long,void*) "
            "mrmlSceneChanged(vtkMRMLScene*) urlReceived(QString) usageEventLogged(QString,QString)"),
        slots=(
            "loadFiles(QStringList) loadFiles(QStringList,vtkMRMLMessageCollection*) openUrl(QString) "
            "pauseRender() restart() resumeRender() setRenderPaused(bool) unregisterResource(int)"),
        methods=(
            "acknowledgment addModuleAssociatedNodeType allModuleAssociatedNodeTypes "
            "appendEnvironmentVariable application applicationLocale applicationLocaleName "
            "applicationLogic applicationUpdateManager arch caCertificatesPath cachePath copyrights "
            "coreCommandOptions coreIOManager corePythonManager defaultCachePath "
            "defaultExtensionsInstallPath defaultScenePath defaultSettings defaultTemporaryPath "
            "dicomDatabase dicomDatabaseShared documentationBaseUrl documentationLanguage "
            "documentationVersion environment errorLogModel exec extensionsInstallPath "
            "extensionsManagerModel handleURIArguments intDir isCustomMainApplication isEmbeddedModule "
            "isEnvironmentVariableValueSet isInstalled isURIArgumentHandlingEnabled "
            "isUsageLoggingSupported launcherExecutableFilePath "
            "launcherRevisionSpecificUserSettingsFilePath launcherSettingsFilePath libraries "
            "loadCaCertificates loadLanguage loadTranslations logUsageEvent mainApplicationDisplayName "
            "mainApplicationMajorVersion mainApplicationMinorVersion mainApplicationName "
            "mainApplicationPatchVersion mainApplicationRepositoryRevision mainApplicationRepositoryUrl "
            "mainApplicationRevision majorVersion minorVersion moduleDocumentationUrl moduleLogic "
            "moduleManager modulesAssociatedWithNodeType mrmlScene os parseArguments platform "
            "prependEnvironmentVariable pythonConsole registerResource releaseType "
            "removeModuleAssociatedNodeType repositoryBranch repositoryRevision repositoryUrl returnCode "
            "revision revisionUserSettings setAttribute setCachePath setCoreCommandOptions "
            "setCoreIOManager setCorePythonManager setDefaultScenePath setEnvironmentVariable "
            "setExtensionsInstallPath setExtensionsManagerModel setPythonConsole setTemporaryPath "
            "setURIArgumentHandlingEnabled setapplicationUpdateManager settings showConsoleMessage "
            "slicerDefaultSettingsFilePath slicerHome slicerRevisionUserSettingsFilePath slicerSharePath "
            "slicerUserSettingsFilePath startupEnvironment startupWorkingPath temporaryPath "
            "testAttribute testingEnabled toSlicerHomeAbsolutePath toSlicerHomeAbsolutePaths "
            "toSlicerHomeRelativePath toSlicerHomeRelativePaths translationFolders userSettings"),
    ),
    "qSlicerApplication": ClassApi(
        base="qSlicerCoreApplication",
        properties=(
            ""),
        signals=(
            "renderPaused(bool) startupCompleted()"),
        slots=(
            "confirmRestart() confirmRestart(QString) currentLogFile() launchDesigner() "
            "launchDesigner(QStringList) loadFiles(QStringList) "
            "loadFiles(QStringList,vtkMRMLMessageCollection*) numberOfRecentLogFilesToKeep() "
            "openApplicationDownloadWebsite() openExtensionsCatalogWebsite() "
            "openExtensionsManagerDialog() openNodeModule(vtkMRMLNode*) "
            "openNodeModule(vtkMRMLNode*,QString) openNodeModule(vtkMRMLNode*,QString,QString) "
            "pauseRender() recentLogFiles() resumeRender() setHasBorderInFullScreen(bool) "
            "setPythonConsoleLogLevel(ctkErrorLogLevel::LogLevel) setRenderPaused(bool)"),
        methods=(
            "application commandOptions createDICOMBrowserForMainDatabase ioManager isCodePageUtf8 "
            "layoutManager logApplicationInformation mainWindow nodeModule notify openSettingsDialog "
            "pythonConsole pythonConsoleLogLevel pythonManager setLayoutManager setToolTipsEnabled "
            "settingsDialog testingUtility windowsActiveCodePage windowsOSBuildNumber"),
    ),
    # Libs/MRML/Widgets/qMRMLTableView.h at v5.10.0 (the review panel's tables).
    "qMRMLTableView": ClassApi(
        base="QTableView",
        properties=(
            "firstColumnLocked firstRowLocked transposed"),
        signals=(
            "mrmlSceneChanged(vtkMRMLScene*) selectionChanged()"),
        slots=(
            "copySelection() deleteColumn() deleteRow() insertColumn() insertRow() pasteSelection() "
            "plotSelection() setFirstColumnLocked(bool) setFirstRowLocked(bool) "
            "setMRMLScene(vtkMRMLScene*) setMRMLTableNode(vtkMRMLNode*) "
            "setMRMLTableNode(vtkMRMLTableNode*) setMRMLTableViewNode(vtkMRMLTableViewNode*) "
            "setTransposed(bool)"),
        methods=(
            "firstColumnLocked firstRowLocked mrmlScene mrmlTableNode mrmlTableViewNode "
            "selectedMRMLTableColumnIndices sortFilterProxyModel tableModel transposed"),
    ),
}

API = {**QT_API, **CTK_API, **SLICER_API}

PYTHONQT_METHODS = frozenset({"connect", "disconnect", "className", "help", "delete"})
"""Added by PythonQt to every wrapped QObject (``obj.connect("signal(args)", callable)``)."""
DESIGNER_LAYOUT_PROPERTIES = frozenset({"leftMargin", "topMargin", "rightMargin", "bottomMargin"})
"""Designer's per-side margin pseudo-properties of layouts (written by Qt Designer, read by uic)."""
SLICER_UTIL = {
    # Base/Python/slicer/util.py at v5.10.0: name → parameter names ("**" accepts any keyword).
    "loadUI": ("path",),
    "childWidgetVariables": ("widget",),
    "confirmOkCancelDisplay": ("text", "windowTitle", "parent", "**"),
    "errorDisplay": ("text", "windowTitle", "parent", "standardButtons", "**"),
    "delayDisplay": ("message", "autoCloseMsec", "parent", "**"),
    "tryWithErrorDisplay": ("message", "show", "waitCursor"),
    "pip_install": ("requirements",),
    "getModuleLogic": ("module",),
    "mainWindow": (),
    "getNode": ("pattern", "index", "scene"),
    "VTKObservationMixin": (),
}
PARAMETER_NODE_WRAPPER = frozenset({
    # wrapper.py at v5.10.0 (checkedSetAttr): what a @parameterNodeWrapper instance adds to its fields.
    "allParameters", "default", "isCached", "dataType", "getValue", "setValue", "connectGui",
    "connectParametersToGui", "disconnectGui", "StartModify", "EndModify", "AddObserver", "RemoveObserver",
    "Modified", "parameterNode"})


def members(class_name: str, kind: str) -> set[str]:
    """``kind`` names of a class and all its bases (signals/slots as normalized signatures)."""
    names: set[str] = set()
    while class_name:
        api = API[class_name]
        text = getattr(api, kind)
        names |= set(re.findall(r"[\w:]+\([^)]*\)", text)) if kind in ("signals", "slots") else set(text.split())
        class_name = api.base
    return names


def normalized(signature: str) -> str:
    """Qt's normalized form: no spaces around punctuation, ``const T&`` → ``T``."""
    signature = re.sub(r"\s*([(),*&])\s*", r"\1", signature.strip())
    return re.sub(r"(?<=[(,])const ([\w:<>]+)&", r"\1", signature)


def callable_names(class_name: str) -> set[str]:
    signals = {s.split("(")[0] for s in members(class_name, "signals")}
    slots = {s.split("(")[0] for s in members(class_name, "slots")}
    return members(class_name, "methods") | slots | signals | PYTHONQT_METHODS


# ------------------------------------------------------------------ the .ui file
def ui_problems(ui_text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """(problems, every (class, name) checked) of a Qt Designer file."""
    root = ElementTree.fromstring(ui_text)
    classes = {widget.get("name"): widget.get("class") for widget in root.iter("widget")}
    problems, checked = [], set()
    for name, cls in classes.items():
        if cls not in API:
            problems.append(f"{name}: widget class {cls} is not in the tables")
    for element in root.iter():
        if element.tag not in ("widget", "layout") or element.get("class") not in API:
            continue  # spacers carry Designer's own pseudo-properties
        cls = element.get("class")
        allowed = members(cls, "properties") | (DESIGNER_LAYOUT_PROPERTIES if element.tag == "layout" else set())
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":
                continue  # dynamic property (SlicerParameterName), any name
            checked.add((cls, prop.get("name")))
            if prop.get("name") not in allowed:
                problems.append(f"{element.get('name')}: {cls} has no property {prop.get('name')!r}")
    for connection in root.iter("connection"):
        sender, receiver = classes.get(connection.findtext("sender")), classes.get(connection.findtext("receiver"))
        signal, slot = normalized(connection.findtext("signal")), normalized(connection.findtext("slot"))
        checked |= {(sender, signal), (receiver, slot)}
        if sender not in API or signal not in members(sender, "signals"):
            problems.append(f"connection: {sender} has no signal {signal}")
        if receiver not in API or slot not in members(receiver, "slots") | members(receiver, "signals"):
            problems.append(f"connection: {receiver} has no slot {slot}")
    for custom in root.iter("customwidget"):
        cls = custom.findtext("class")
        if cls not in API or custom.findtext("header") != f"{cls}.h":
            problems.append(f"custom widget {cls}: unknown class or header {custom.findtext('header')}")
    return problems, checked


# ------------------------------------------------------------------ the module's Python
QT_MODULES = {"qt", "ctk"}
KNOWN_EXPRESSIONS = {"slicer.app": "qSlicerApplication", "slicer.dicomDatabase": "ctkDICOMDatabase",
                     "self.layout": "QVBoxLayout"}  # ScriptedLoadableModuleWidget.layout: the panel's QVBoxLayout


def dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain ('' for anything else); ``getattr(x, "y", d)`` reads as ``x.y``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
        base = dotted(node.args[0])
        return f"{base}.{node.args[1].value}" if base else ""
    return ""


class ModuleChecker:
    """Gives Qt classes to the expressions of CervixAutoSeg.py, then checks every member used on them.

    Typed expressions: ``self.ui.<name>`` (the .ui's class), ``slicer.app``,
    ``slicer.dicomDatabase``, names and ``self`` attributes assigned from ``qt.X(...)``,
    ``ctk.X(...)``, ``slicer.util.loadUI(...)`` or a typed expression, loop variables over
    tuples of typed expressions, and parameters of methods called with typed arguments.
    """

    def __init__(self, source: str, ui_classes: dict[str, str], ui_root_class: str):
        self.tree = ast.parse(source)
        self.ui_classes, self.ui_root_class = ui_classes, ui_root_class
        self.names: dict[str, set[str]] = {}  # "name" / "self.attr" / "method:param" → classes
        self.problems: list[str] = []
        self.checked: set[tuple[str, str]] = set()

    def classes_of(self, node: ast.AST, scope: str = "") -> set[str]:
        text = dotted(node)
        if text.startswith("self.ui.") and text.count(".") == 2:
            cls = self.ui_classes.get(text.split(".")[2])
            return {cls} if cls else set()
        if text in KNOWN_EXPRESSIONS:
            return {KNOWN_EXPRESSIONS[text]}
        if isinstance(node, ast.Call):
            function = dotted(node.func)
            if function.split(".")[0] in QT_MODULES and function.count(".") == 1:
                return {function.split(".")[1]}
            if function == "slicer.util.loadUI":
                return {self.ui_root_class}
        return set(self.names.get(f"{scope}:{text}", set()) | self.names.get(text, set())) if text else set()

    def learn(self) -> None:
        """Assignments, loops and calls that give names a class (two passes: order does not matter)."""
        functions = [f for f in ast.walk(self.tree) if isinstance(f, ast.FunctionDef)]
        methods: dict[str, list[ast.FunctionDef]] = {}
        for function in functions:  # several classes have an __init__: keep them all
            methods.setdefault(function.name, []).append(function)
        for _ in range(2):
            for function in functions:
                for node in ast.walk(function):
                    self._learn_node(node, function.name, methods)

    def _learn_node(self, node, scope, methods) -> None:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            classes = self.classes_of(node.value, scope)
            target = dotted(node.targets[0])
            if classes and target:
                self.names.setdefault(target if target.startswith("self.") else f"{scope}:{target}",
                                      set()).update(classes)
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple,
                                                                                                           ast.List)):
            for element in node.iter.elts:
                self.names.setdefault(f"{scope}:{node.target.id}", set()).update(self.classes_of(element, scope))
        elif isinstance(node, ast.Call) and dotted(node.func).startswith("self.") and dotted(node.func).count(".") == 1:
            for called in methods.get(dotted(node.func).split(".")[1], []):
                parameters = [a.arg for a in called.args.args]
                parameters = parameters[1:] if parameters[:1] in (["self"], ["cls"]) else parameters
                for parameter, argument in zip(parameters, node.args):
                    self.names.setdefault(f"{called.name}:{parameter}", set()).update(
                        self.classes_of(argument, scope))

    def check(self) -> list[str]:
        self.learn()
        for function in (f for f in ast.walk(self.tree) if isinstance(f, ast.FunctionDef)):
            calls = {id(n.func): n for n in ast.walk(function) if isinstance(n, ast.Call)}
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute):
                    for cls in self.classes_of(node.value, function.name):
                        self._check_member(cls, node, calls.get(id(node)))
        self._check_slicer_python()
        return self.problems

    def _check_member(self, cls: str, node: ast.Attribute, call: ast.Call | None) -> None:
        name = node.attr
        if cls not in API:
            self.problems.append(f"line {node.lineno}: class {cls} is not in the tables")
        elif call is not None and name in ("connect", "disconnect") and call.args \
                and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
            signal = normalized(call.args[0].value)
            self.checked.add((cls, signal))
            if signal not in members(cls, "signals"):
                self.problems.append(f"line {node.lineno}: {cls} has no signal {signal}")
        elif call is not None:
            self.checked.add((cls, name))
            if name not in callable_names(cls):
                self.problems.append(f"line {node.lineno}: {cls} has no method, slot or signal {name}")
        else:
            self.checked.add((cls, name))
            allowed = members(cls, "properties")
            if not isinstance(node.ctx, ast.Store):
                allowed = allowed | callable_names(cls)  # a bound method passed on (e.g. as a callback)
            if name not in allowed:
                self.problems.append(f"line {node.lineno}: {cls} has no property {name}")

    def _check_slicer_python(self) -> None:
        """slicer.util functions (and their keyword arguments) and the parameter-node wrapper's methods."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
                for alias in node.names:
                    self._check_util(alias.name, node.lineno)
            elif isinstance(node, ast.Attribute) and dotted(node.value) == "slicer.util":
                self._check_util(node.attr, node.lineno)
            elif isinstance(node, ast.Call) and dotted(node.func).startswith("slicer.util."):
                function = dotted(node.func).split(".")[2]
                for keyword in node.keywords:
                    if keyword.arg not in SLICER_UTIL.get(function, ("**",)) and "**" not in SLICER_UTIL[function]:
                        self.problems.append(f"line {node.lineno}: slicer.util.{function} takes no {keyword.arg}=")
            elif isinstance(node, ast.Attribute) and dotted(node.value).endswith("parameterNode") \
                    and dotted(node.value) != "self.parameterNode":
                self.checked.add(("parameterNodeWrapper", node.attr))

    def _check_util(self, name: str, line: int) -> None:
        self.checked.add(("slicer.util", name))
        if name not in SLICER_UTIL:
            self.problems.append(f"line {line}: slicer.util has no {name}")


def parameter_wrapper_problems(source: str) -> list[str]:
    """Methods called on the parameter node wrapper (``parameterNode.x(...)``/``self._parameterNode.x(...)``)."""
    tree = ast.parse(source)
    fields = {statement.target.id for node in tree.body if isinstance(node, ast.ClassDef)
              and any(dotted(d) == "parameterNodeWrapper" for d in node.decorator_list)
              for statement in node.body if isinstance(statement, ast.AnnAssign)}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and dotted(node.func.value) in ("parameterNode", "self._parameterNode") \
                and node.func.attr not in PARAMETER_NODE_WRAPPER | fields:
            problems.append(f"line {node.lineno}: the parameter node wrapper has no {node.func.attr}")
    return problems


def module_problems(source: str, ui_text: str) -> tuple[list[str], set[tuple[str, str]]]:
    root = ElementTree.fromstring(ui_text)
    ui_classes = {widget.get("name"): widget.get("class") for widget in root.iter("widget")}
    checker = ModuleChecker(source, ui_classes, root.find("widget").get("class"))
    return checker.check() + parameter_wrapper_problems(source), checker.checked


# ------------------------------------------------------------------ tests
def test_the_ui_file_uses_only_names_slicer_510_has():
    problems, checked = ui_problems(UI_FILE.read_text(encoding="utf-8"))
    assert problems == []
    assert {("qMRMLNodeComboBox", "noneEnabled"), ("qMRMLNodeComboBox", "showChildNodeTypes"),
            ("QProgressBar", "visible"), ("QLabel", "textInteractionFlags"),
            ("qMRMLWidget", "mrmlSceneChanged(vtkMRMLScene*)"),
            ("qMRMLNodeComboBox", "setMRMLScene(vtkMRMLScene*)"), ("QTableWidget", "selectionBehavior"),
            ("QTableWidget", "editTriggers"), ("QTableWidget", "columnCount")} <= checked


def test_the_module_uses_only_names_slicer_510_has():
    problems, checked = module_problems(MODULE_FILE.read_text(encoding="utf-8"), UI_FILE.read_text(encoding="utf-8"))
    assert problems == []
    # Every kind of use was reached (the checker did not skip them).
    assert {("qMRMLNodeComboBox", "currentNodeChanged(vtkMRMLNode*)"), ("QComboBox", "currentIndexChanged(int)"),
            ("QPushButton", "clicked(bool)"), ("QCheckBox", "toggled(bool)"), ("QTimer", "timeout()"),
            ("qSlicerApplication", "startupCompleted()"), ("qSlicerApplication", "majorVersion"),
            ("qSlicerApplication", "testingEnabled"), ("qSlicerApplication", "temporaryPath"),
            ("QProgressBar", "format"), ("QComboBox", "itemData"), ("QComboBox", "count"),
            ("QCheckBox", "enabled"), ("qMRMLNodeComboBox", "enabled"), ("qMRMLWidget", "setMRMLScene"),
            ("ctkDICOMIndexer", "addFile"), ("ctkDICOMIndexer", "waitForImportFinished"),
            ("ctkDICOMDatabase", "fileForInstance"), ("ctkDICOMDatabase", "isOpen"), ("QLabel", "wordWrap"),
            ("slicer.util", "tryWithErrorDisplay"), ("slicer.util", "confirmOkCancelDisplay"),
            ("slicer.util", "VTKObservationMixin"), ("QVBoxLayout", "addWidget"),
            ("QTableWidget", "cellClicked(int,int)"), ("QTableWidget", "setItem"), ("QTableWidgetItem", "setToolTip"),
            ("QTableWidget", "resizeColumnsToContents"), ("QLabel", "styleSheet")} <= checked


@pytest.mark.parametrize("right,wrong,name", [
    ('"currentNodeChanged(vtkMRMLNode*)"', '"currentNodeChange(vtkMRMLNode*)"', "currentNodeChange"),
    ('"toggled(bool)"', '"toggle(bool)"', "toggle(bool)"),
    ('"startupCompleted()"', '"startupComplete()"', "startupComplete()"),
    (".progressBar.format =", ".progressBar.formatString =", "formatString"),
    ("widget.enabled = not view.polling", "widget.enable = not view.polling", "enable"),
    ("combo.findData(current)", "combo.findItemData(current)", "findItemData"),
    ("indexer.waitForImportFinished()", "indexer.waitForImport()", "waitForImport"),
    ("waitCursor=True", "waitcursor=True", "waitcursor"),
    ("connectParametersToGui(mapping)", "connectParameterToGui(mapping)", "connectParameterToGui"),
    ("ask=slicer.util.confirmOkCancelDisplay", "ask=slicer.util.confirmOKCancelDisplay", "confirmOKCancelDisplay"),
])
def test_a_misspelled_name_in_the_module_is_found(right, wrong, name):
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert right in source
    problems, _ = module_problems(source.replace(right, wrong, 1), UI_FILE.read_text(encoding="utf-8"))
    assert problems and all(name in problem for problem in problems), problems


@pytest.mark.parametrize("right,wrong", [
    ('<property name="noneEnabled">', '<property name="noneEnable">'),
    ('<property name="wordWrap">', '<property name="wordwrap">'),
    ("<signal>mrmlSceneChanged(vtkMRMLScene*)</signal>", "<signal>mrmlSceneChange(vtkMRMLScene*)</signal>"),
    ("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScene(vtkMRMLNode*)</slot>"),
    ('class="qMRMLNodeComboBox"', 'class="qMRMLNodeCombobox"'),
])
def test_a_misspelled_name_in_the_ui_file_is_found(right, wrong):
    text = UI_FILE.read_text(encoding="utf-8")
    assert right in text
    problems, _ = ui_problems(text.replace(right, wrong, 1))
    assert problems, f"{wrong} not reported"


# ------------------------------------------------------------------ the review panel (issue 16)
def test_every_module_file_is_checked():
    assert sorted((ROOT / "CervixAutoSeg").glob("*.py")) == sorted(module for module, _ in MODULE_FILES)
    assert all(ui.is_file() for _, ui in MODULE_FILES)


def test_the_review_panel_uses_only_names_slicer_510_has():
    ui_text = REVIEW_UI_FILE.read_text(encoding="utf-8")
    problems, checked = ui_problems(ui_text)
    assert problems == []
    assert {("QLineEdit", "placeholderText"), ("qMRMLTableView", "toolTip"),
            ("qMRMLTableView", "setMRMLScene(vtkMRMLScene*)")} <= checked
    problems, checked = module_problems(REVIEW_MODULE_FILE.read_text(encoding="utf-8"), ui_text)
    assert problems == []
    assert {("QShortcut", "activated()"), ("qMRMLTableView", "clicked(QModelIndex)"), ("qMRMLTableView", "setMRMLTableNode"),
            ("QLineEdit", "textChanged(QString)"), ("QLineEdit", "text"), ("QProgressBar", "maximum"),
            ("slicer.util", "mainWindow"), ("QComboBox", "findData")} <= checked


@pytest.mark.parametrize("right,wrong,name", [
    ('"activated()"', '"activate()"', "activate()"),
    ("flagsTableView.setMRMLTableNode(", "flagsTableView.setMRMLTable(", "setMRMLTable"),
    ('"clicked(QModelIndex)"', '"clicked(QModelIndex*)"', "clicked(QModelIndex*)"),
    ("slicer.util.mainWindow()", "slicer.util.mainwindow()", "mainwindow"),
])
def test_a_misspelled_name_in_the_review_panel_is_found(right, wrong, name):
    source = REVIEW_MODULE_FILE.read_text(encoding="utf-8")
    assert right in source
    problems, _ = module_problems(source.replace(right, wrong, 1), REVIEW_UI_FILE.read_text(encoding="utf-8"))
    assert problems and all(name in problem for problem in problems), problems
